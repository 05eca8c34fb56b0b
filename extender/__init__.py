"""powercap extender: adapts Kubernetes and the outside world to the placement core."""

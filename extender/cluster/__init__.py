"""The cluster view: the mirror of Nodes and Pods, the cluster state, pods, Events and the Lease."""

"""The kube-scheduler extender webhook: protocol, decisions, binding, planner and the HTTP app."""

"""Fleet rollouts: a signed image onto many nodes in waves, health-gated, on Ansible or
Kubernetes."""

"""gNMI: port state streamed from the switches (beside p4rt/, the same layer)."""

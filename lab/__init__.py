"""The Mininet harness: bring a topology up with real switch processes, inject faults, run the
demo. It imports the controller; the controller never imports it."""

"""What operators look at: Prometheus metrics and the live web view, each served over HTTP from
the controller's own event loop. Nothing below this layer imports it: the parts it watches
expose listeners and state, and this layer reads them."""

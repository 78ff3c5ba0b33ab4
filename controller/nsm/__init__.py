"""The NSM API the controller serves: the tools under it (base/), the registries (registry/), the
NetworkService chain (elements/), and the server that puts them together (see README.md)."""

"""The NSM registry: network services and their endpoints, Register/Find(watch)/Unregister, expiry."""

"""Hospital edge node: spool, forwarder to the cloud, reconciliation (arrives with issue 3)."""

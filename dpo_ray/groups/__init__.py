"""The Ray layer: places workers in placement groups, wires their rendezvous, and calls them."""

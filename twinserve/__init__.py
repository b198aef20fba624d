"""twinserve: train, export and serve digital twins of visual cortex.

The rooms install under this namespace: `twinserve.training`, `twinserve.export`,
`twinserve.serving`, `twinserve.clients`, plus `twinserve.benchmarks`. This package itself holds
what every room shares (`contract`, `errors`) and the composition root (`cli`, `demo`), the only
code that imports across rooms.
"""

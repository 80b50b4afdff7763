"""The end-to-end scenarios, one async function each: (context, topology) -> figures."""

"""The Cosmos web console (``cosmos console``): docs/console.md."""

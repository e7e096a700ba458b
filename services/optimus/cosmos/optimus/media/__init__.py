"""The Cosmos media tool: the steps of the encoding pipeline as one command-line program.

``python -m cosmos.optimus.media <command>`` runs one step (probe, split, encode, assemble, quality,
package, publish, verify, make-test-clip) in its own process, as a Stratum job. See docs/encoding.md.
"""

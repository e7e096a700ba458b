"""The ``cosmos`` command line: run the servers, bring up the embedded stack, talk to the platform."""

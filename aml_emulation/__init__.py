"""A local, stateful stand-in for the Azure ML workspace operations the project uses.

Tests and ``make demo-azure`` hand an :class:`~aml_emulation.client.EmulatedMLClient` to the
project's Azure resources where an ``azure.ai.ml.MLClient`` would go. It takes the SDK's own
entity classes, validates them as the SDK does, records every entity it received, and *executes*
them: command jobs run their command in subprocesses, Kubernetes online deployments start Azure
ML's inference server, and the endpoint routes HTTP requests between them by its traffic.

No Azure account and no network are needed; what only Azure can show is listed in
``docs/azure.md``.
"""

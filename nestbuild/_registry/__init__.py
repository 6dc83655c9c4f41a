"""Talking to OCI registries: references, credentials and the distribution client.

``reference`` (``docker://HOST/REPO[:TAG|@DIGEST]``), ``access`` (how to reach a registry),
``auth`` (credentials, found as skopeo finds them) and ``client`` (:class:`RegistryClient`,
which push, pull, sign and the ``docker://`` transport share). Nothing is imported here: the
client pulls in requests and oras, which commands that never talk to a registry should not
pay for.
"""

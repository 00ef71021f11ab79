"""``azmlinfsrv`` bound to one host (127.0.0.1 by default) instead of 0.0.0.0.

Azure ML's inference server has no option for its listen address (it binds 0.0.0.0, right in
a container). Locally we serve on the loopback only: this runs the server's own CLI entry point
(same arguments, same gunicorn/Flask stack) with its default host replaced by
``MLOPS_SERVING_HOST``::

    python -m mlops_assets.serving.launch --entry_script mlops_assets/serving/score.py --port 5001
"""

import os
import sys


def main() -> None:
    from azureml_inference_server_http import amlserver

    amlserver.DEFAULT_HOST = os.environ.get("MLOPS_SERVING_HOST", "127.0.0.1")
    sys.argv[0] = "azmlinfsrv"
    amlserver.run()


if __name__ == "__main__":
    main()

"""PublishError: why `adrank publish` refused a model version.

Contract: raised by every step of a publish (staging.py, gates.py, publish.py) before anything is visible; by
then the publish has removed its staging folder, so the repository is as it was. The message names what failed
(the file, the tensor, the figure) in the terms of the command line (`--model`, `--version`, `--max-slowdown`),
and the CLI prints it as is.
"""

from __future__ import annotations


class PublishError(Exception):
    """A publish refused; the message names what failed. The repository is unchanged."""

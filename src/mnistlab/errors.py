"""The one exception type for problems a user can cause and fix.

Anything raised as :class:`MnistlabError` is shown by the CLI as a single line (exit code 2) and by the
server as a 4xx answer. Every other exception is a bug in mnistlab and keeps its traceback.
"""


class MnistlabError(Exception):
    """A user-caused failure: a bad file, flag, image or run. The message names the problem and the fix."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C, SIGTERM or SIGHUP (``signum``); ``run_dir`` still holds a valid, resumable
    run of the last completed epoch.

    A KeyboardInterrupt, so that a notebook's or a sweep's ``except Exception`` does not swallow the user's
    Ctrl-C and carry on.
    """

    def __init__(self, *, run_dir: object, epochs_completed: int, signum: int = 2) -> None:
        super().__init__(f"interrupted: {run_dir} holds {epochs_completed} completed epoch(s)")
        self.run_dir = run_dir
        self.epochs_completed = epochs_completed
        self.signum = int(signum)

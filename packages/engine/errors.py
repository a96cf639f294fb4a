"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """Bad input or usage.

    The CLI prints the message as one line (no traceback) and exits with code 2. The message names the
    file or option at fault and says how to fix it.
    """


class TrainingInterrupted(Exception):
    """Ctrl-C during `train`: the run stopped at an optimizer step and wrote a checkpoint to resume from.

    The CLI prints the message (how to resume) as one line and exits with code 130, as for SIGINT.
    """

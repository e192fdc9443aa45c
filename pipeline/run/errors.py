"""User-facing errors: one line that names the file or key, what is wrong and how to fix it."""


class AGDError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits with 2."""

    def __init__(self, where: str, problem: str, fix: str):
        self.where, self.problem, self.fix = where, problem, fix
        super().__init__(f"{where}: {problem}. Fix: {fix}")

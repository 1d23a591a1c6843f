"""A mixin for tfds builders that read local files instead of downloading."""

import os


class LocalSourceBuilder:
    """Mixin for a tfds builder whose `_split_generators` reads local files.

    Adds a `source` keyword to the constructor (stored as `self._source`)
    and replaces tfds' "Downloading and preparing dataset" message, which
    would be wrong here. Put it first among the bases.
    """

    def __init__(self, *, source: str | os.PathLike | None = None, **kwargs):
        """Initializes the builder.

        Args:
            source: Where the local files are; None for the builder's default.
            **kwargs: Passed to the tfds builder, e.g. `data_dir`.
        """
        self._source = source
        super().__init__(**kwargs)

    def _log_download_bytes(self):
        print(
            f"Preparing dataset {self.name} {self.version} from local files "
            f"(no download) in {self.data_dir}...",
            flush=True,
        )

    def _log_download_done(self):
        pass

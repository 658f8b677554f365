"""Writing a file so that a reader never sees half of it: the one helper every JSON, text and report
writer of rmray calls.

The text goes to a hidden temporary file in the same folder, is flushed to disk, and replaces the target
with ``os.replace`` -- atomic on POSIX within one file system, so a crash or a kill leaves the old file or
the new one, never a truncated mix that a resume or a rerun would then trust.

Output folders may also be on an object store (``s3://``, ``gs://``, any pyarrow filesystem URI, see
:class:`Folder`). Object stores have no rename, but an object appears only when its upload completes (one
PUT, or a completed multipart upload): there a file is made in a local staging folder and uploaded once,
whole -- no temporary object is ever left in the bucket. Credentials and endpoints come from the standard
variables pyarrow and boto read (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``; GCS's ``GOOGLE_APPLICATION_CREDENTIALS``) or the URI's query
(``s3://bucket/out?endpoint_override=...``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from rmray.errors import UsageError


def write_text_atomic(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically (see the module docstring); returns ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json_atomic(path: str, obj, indent: int | None = 2) -> str:
    """``obj`` as JSON at ``path``, atomically; values JSON cannot hold are written with ``str``."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=str))


def is_uri(location: str | None) -> bool:
    return bool(location) and "://" in location


class Folder:
    """One output folder; names inside it are plain file names."""

    def __init__(self, location: str):
        self.location = location.rstrip("/") if is_uri(location) else os.path.abspath(location)
        self.remote = is_uri(location)
        if self.remote:
            import pyarrow.fs

            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(location)
            self.root = self.root.rstrip("/")
            self.staging = tempfile.mkdtemp(prefix="rmray-upload-")  # where files are made before their upload
        else:
            self.fs, self.root, self.staging = None, self.location, self.location

    def path(self, name: str) -> str:
        """Where a reader finds ``name``: a local path or a URI."""
        return f"{self.location}/{name}" if self.remote else os.path.join(self.location, name)

    def stage(self, name: str) -> str:
        """A local path to make ``name`` at before :meth:`publish` (hidden, beside it on a local disk)."""
        return os.path.join(self.staging, name if self.remote else f".{name}.tmp")

    def make(self) -> None:
        if not self.remote:
            os.makedirs(self.location, exist_ok=True)

    def exists(self, name: str) -> bool:
        if not self.remote:
            return os.path.exists(self.path(name))
        import pyarrow.fs

        return self.fs.get_file_info(f"{self.root}/{name}").type != pyarrow.fs.FileType.NotFound

    def read_schema(self, name: str):
        import pyarrow.parquet as pq

        return pq.read_schema(f"{self.root}/{name}", filesystem=self.fs) if self.remote else pq.read_schema(self.path(name))

    def publish(self, staged: str, name: str) -> str:
        """Move a staged file into place: a rename on disk, one upload to an object store."""
        if not self.remote:
            os.replace(staged, self.path(name))
            return self.path(name)
        with open(staged, "rb") as source, self.fs.open_output_stream(f"{self.root}/{name}") as target:
            shutil.copyfileobj(source, target, length=8 << 20)
        os.remove(staged)
        return self.path(name)

    def write_text(self, name: str, text: str) -> str:
        if not self.remote:
            return write_text_atomic(self.path(name), text)
        staged = self.stage(name)
        with open(staged, "w", encoding="utf-8") as f:
            f.write(text)
        return self.publish(staged, name)

    def close(self) -> None:
        """Remove the staging folder of an object-store output."""
        if self.remote:
            shutil.rmtree(self.staging, ignore_errors=True)

    def check_writable(self, key: str) -> None:
        """Write and delete a small probe object, so a missing bucket, refused credentials or a silent
        endpoint is one line now rather than a traceback after every row was scored."""
        if not self.remote:
            return
        probe = f"{self.root}/.rmray-write-probe-{os.getpid()}"
        try:
            if self.fs.type_name == "local":  # file://: a folder to make (object stores have none)
                self.fs.create_dir(self.root, recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"rmray")
            self.fs.delete_file(probe)
        except OSError as err:
            raise UsageError(f"{key} {self.location}: {storage_problem(err)}") from None


def storage_problem(err: Exception) -> str:
    """What an object store's error means and what to check, in one line."""
    text = str(err)
    squashed = text.lower().replace("_", "")  # boto spells NoSuchBucket, the AWS C++ SDK NO_SUCH_BUCKET
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or "the default endpoint"
    # Credentials first: a refused key "does not exist in our records", which is no missing bucket.
    if any(code in squashed for code in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "forbidden",
                                         "expiredtoken", "credentials", " 403")):
        return ("credentials refused (fix: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and that "
                "they may write here)")
    if "nosuchbucket" in squashed or "does not exist" in squashed or "not found" in squashed:
        return "the bucket does not exist (fix: create it, or correct the bucket name)"
    if any(code in text for code in ("Could not connect", "curlCode: 7", "NETWORK_CONNECTION", "Connection refused",
                                     "timed out", "Timeout", "resolve host")):
        return f"the endpoint does not answer ({endpoint}; fix: check AWS_ENDPOINT_URL or the URI's endpoint_override)"
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__

"""Reading a job's `secret_env` when its run starts: each file read again (a rotated credential
is used by the next run), each `env_var` taken from jobd's own environment. The values live only
in the runner: in a command's environment or a handler's `ctx.secrets`, and in the list of texts
hidden from what the run reports."""

from __future__ import annotations

from collections.abc import Mapping

from jobd.config.secret_env import MIN_SECRET_CHARS, SecretSource

# A credential is a password or a token, not a document: a bigger file is a wrong path.
MAX_SECRET_BYTES = 64 * 1024


class CredentialError(Exception):
    """A secret that cannot be read; the message names the variable and where it comes from,
    never the value."""


def read_secret_env(sources: tuple[SecretSource, ...], environ: Mapping[str, str]) -> dict[str, str]:
    return {source.name: _checked(source, _read(source, environ)) for source in sources}


def values_to_hide(sources: tuple[SecretSource, ...], environ: Mapping[str, str]) -> list[str]:
    """The values that can be read now, for hiding them where a run starts from outside (its
    params); one that cannot be read is hidden by nothing, and its run fails at its start."""
    values: list[str] = []
    for source in sources:
        try:
            values.append(_checked(source, _read(source, environ)))
        except CredentialError:
            continue
    return values


def _read(source: SecretSource, environ: Mapping[str, str]) -> str:
    where = f"secret_env.{source.name}"
    if source.env_var is not None:
        value = environ.get(source.env_var)
        if value is None:
            raise CredentialError(f"{where}: environment variable {source.env_var} is not set in jobd's environment")
        return value
    assert source.file is not None
    try:
        with open(source.file, "rb") as file:
            data = file.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise CredentialError(f"{where}: cannot read {source.file} ({exc.strerror})") from None
    if len(data) > MAX_SECRET_BYTES:
        raise CredentialError(f"{where}: {source.file} is larger than {MAX_SECRET_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError(f"{where}: {source.file} is not UTF-8 text") from None
    # `echo secret > file` ends it with a newline that is not part of the secret.
    return text.rstrip("\r\n")


def _checked(source: SecretSource, value: str) -> str:
    where = f"secret_env.{source.name} ({source.describe()})"
    if "\0" in value:
        raise CredentialError(f"{where}: the value holds a NUL character, which no environment variable can")
    if 0 < len(value) < MIN_SECRET_CHARS:
        raise CredentialError(
            f"{where}: the value is shorter than {MIN_SECRET_CHARS} characters, too short to be hidden "
            "in the run's output"
        )
    return value

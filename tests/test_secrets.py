"""Secret resolution, the shared key and the keygen / encrypt-token commands."""

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from podspool import config
from podspool.cli import main
from podspool.errors import ConfigError
from podspool.secrets import Resolver, encrypt_token, generate_key, load_key

SENTINEL = "SENTINEL-TOKEN-9b2f44e1"


@pytest.fixture
def layout(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "credentials").mkdir()
    (tmp_path / "podspool.yaml").write_text(textwrap.dedent(f"""\
        spool: {{directory: {tmp_path}/spool}}
        state_directory: {tmp_path}/state
        secrets_directory: {tmp_path}/secrets
        shared_key_file: {tmp_path}/shared.key
        """))
    return tmp_path


def with_token(layout, token, secure=False):
    (layout / "conf.d").mkdir(exist_ok=True)
    (layout / "conf.d" / "pod.yaml").write_text(textwrap.dedent(f"""\
        - id: 1
          name: pod
          type: proofpoint
          properties:
            cluster: example_hosted
            token: "{token}"
            secure: {"true" if secure else "false"}
        """))
    return str(layout / "podspool.yaml")


def loaded_token(main_file, environ):
    return config.load(main_file, environ=environ).devices[0].token


def test_token_resolves_four_ways(layout):
    (layout / "secrets" / "pod-token").write_text(SENTINEL + "\n")
    from_file = loaded_token(with_token(layout, "$secret{pod-token}"), {})

    (layout / "credentials" / "pod-token").write_text(SENTINEL)
    (layout / "secrets" / "pod-token").write_text("not-this-one")
    environ = {"CREDENTIALS_DIRECTORY": str(layout / "credentials")}
    from_credentials = loaded_token(with_token(layout, "$secret{pod-token}"), environ)

    from_env = loaded_token(with_token(layout, "${POD_TOKEN}"), {"POD_TOKEN": SENTINEL})

    generate_key(str(layout / "shared.key"))
    ciphertext = encrypt_token(load_key(str(layout / "shared.key")), SENTINEL)
    from_secure = loaded_token(with_token(layout, ciphertext, secure=True), {})

    assert from_file == SENTINEL
    assert from_credentials == SENTINEL
    assert from_env == SENTINEL
    assert from_secure == SENTINEL


def test_secret_strips_one_newline_only(layout):
    (layout / "secrets" / "pod-token").write_text(SENTINEL + "\n\n")
    assert loaded_token(with_token(layout, "$secret{pod-token}"), {}) == SENTINEL + "\n"


def test_dollar_without_brace_kept(layout):
    assert loaded_token(with_token(layout, "abc$def$"), {}) == "abc$def$"


def test_unset_environment_variable(layout):
    with pytest.raises(ConfigError) as caught:
        config.load(with_token(layout, "${POD_TOKEN}"), environ={"POD_TOKEN": ""})
    message = str(caught.value)
    assert "pod.yaml" in message
    assert "[0].properties.token" in message
    assert "POD_TOKEN is not set or empty" in message


def test_missing_secret_file(layout):
    with pytest.raises(ConfigError) as caught:
        config.load(with_token(layout, "$secret{absent}"), environ={})
    message = str(caught.value)
    assert "[0].properties.token" in message
    assert "secret absent not found" in message
    assert "LoadCredential" in message


def test_secret_name_with_path_rejected(layout):
    with pytest.raises(ConfigError) as caught:
        config.load(with_token(layout, "$secret{../etc/passwd}"), environ={})
    assert "invalid secret name" in str(caught.value)


def test_wrong_shared_key(layout):
    other = layout / "other.key"
    generate_key(str(other))
    ciphertext = encrypt_token(load_key(str(other)), SENTINEL)
    generate_key(str(layout / "shared.key"))
    with pytest.raises(ConfigError) as caught:
        config.load(with_token(layout, ciphertext, secure=True), environ={})
    message = str(caught.value)
    assert "device pod cannot be decrypted" in message
    assert "encrypt-token" in message
    assert ciphertext not in message
    assert (layout / "shared.key").read_text().strip() not in message


def test_tampered_ciphertext(layout):
    generate_key(str(layout / "shared.key"))
    ciphertext = encrypt_token(load_key(str(layout / "shared.key")), SENTINEL)
    tampered = ciphertext[:-6] + ("A" if ciphertext[-6] != "A" else "B") + ciphertext[-5:]
    with pytest.raises(ConfigError) as caught:
        config.load(with_token(layout, tampered, secure=True), environ={})
    assert "cannot be decrypted" in str(caught.value)
    assert SENTINEL not in str(caught.value)


def test_key_file_readable_by_others(layout):
    key_file = layout / "shared.key"
    generate_key(str(key_file))
    ciphertext = encrypt_token(load_key(str(key_file)), SENTINEL)
    os.chmod(key_file, 0o644)
    with pytest.raises(ConfigError) as caught:
        config.load(with_token(layout, ciphertext, secure=True), environ={})
    message = str(caught.value)
    assert "accessible by group or others" in message
    assert "chmod 600" in message


def test_key_needed_only_with_secure(layout):
    (layout / "secrets" / "t").write_text(SENTINEL)
    settings = config.load(with_token(layout, "$secret{t}"), environ={})
    assert not (layout / "shared.key").exists()
    assert settings.devices[0].token == SENTINEL


def test_keygen_writes_0600_and_never_overwrites(tmp_path, capsys):
    key_file = tmp_path / "shared.key"
    old_umask = os.umask(0)
    try:
        assert main(["keygen", "-o", str(key_file)]) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    original = key_file.read_bytes()
    assert main(["keygen", "-o", str(key_file)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert key_file.read_bytes() == original


def test_resolver_redacts_secret_values():
    resolver = Resolver(None, {"T": SENTINEL})
    resolver.resolve("${T}", file="f", key="k", sensitive=True)
    assert resolver.redact(f"bad value {SENTINEL}!") == "bad value ***!"


@pytest.mark.integration
def test_encrypt_token_command_round_trip(tmp_path):
    key_file = tmp_path / "shared.key"
    generate_key(str(key_file))
    result = subprocess.run(
        [sys.executable, "-m", "podspool", "encrypt-token", "--key-file", str(key_file)],
        input=SENTINEL + "\n", capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ciphertext = result.stdout.strip()
    assert SENTINEL not in result.stdout + result.stderr
    assert load_key(str(key_file)).decrypt(ciphertext.encode()).decode() == SENTINEL


@pytest.mark.integration
def test_encrypt_token_empty_input(tmp_path):
    key_file = tmp_path / "shared.key"
    generate_key(str(key_file))
    result = subprocess.run(
        [sys.executable, "-m", "podspool", "encrypt-token", "--key-file", str(key_file)],
        input="", capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "no token on standard input" in result.stderr

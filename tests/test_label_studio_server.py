"""The local Label Studio launcher's own logic (the server itself runs in tests/integration/)."""

import stat

from label_studio_ale.label_studio_server import SECRET_KEY_FILE, secret_key


def test_a_data_folder_keeps_one_secret_key_that_label_studio_reads_back_whole(tmp_path):
    key = secret_key(tmp_path)
    assert key == secret_key(tmp_path) and len(key) >= 48
    assert not key.startswith("$") and "$" not in key  # django-environ reads '$name' as a reference
    assert stat.S_IMODE((tmp_path / SECRET_KEY_FILE).stat().st_mode) == 0o600


def test_a_key_label_studio_wrote_is_kept_unless_it_starts_with_a_dollar(tmp_path):
    kept, lost = tmp_path / "kept", tmp_path / "lost"
    kept.mkdir()
    lost.mkdir()
    (kept / ".env").write_text("SECRET_KEY=ab#c)d%e\n")
    (lost / ".env").write_text("SECRET_KEY=$6s_165#a5alx389)r\n")
    assert secret_key(kept) == "ab#c)d%e"  # tokens issued before this launcher set it stay valid
    assert secret_key(lost) != "$6s_165#a5alx389)r" and not secret_key(lost).startswith("$")

"""patternkit.aliases: alias names, and the alias file a model repository keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from patternkit.aliases import AliasFile, check_alias, is_alias
from patternkit.service import ApiError


def test_alias_names_follow_mlflow_and_keep_the_reserved_ones_out() -> None:
    assert all(is_alias(a) for a in ("champion", "Challenger", "prod-eu", "a_1"))
    for bad in ("latest", "aliases", "v3", "1st", "", "a b", "x" * 65):
        assert not is_alias(bad), bad
        with pytest.raises(ApiError) as caught:
            check_alias(bad)
        assert caught.value.status == 422 and caught.value.error == "invalid_alias"


def test_an_alias_moves_and_goes_back_through_the_versions_it_pointed_at(tmp_path: Path) -> None:
    aliases = AliasFile(tmp_path, "iris_lr")
    assert aliases.set("champion", "1.0.0")["previous"] is None
    assert aliases.set("champion", "1.0.0")["previous"] == "1.0.0"  # the same: no new entry
    assert aliases.set("champion", "1.1.0")["previous"] == "1.0.0"
    aliases.set("champion", "1.2.0")
    assert AliasFile(tmp_path, "iris_lr").get("champion") == "1.2.0"  # on disk
    assert aliases.back("champion") == {"name": "iris_lr", "alias": "champion",
                                        "version": "1.1.0", "previous": "1.2.0"}
    assert aliases.back("champion")["version"] == "1.0.0"
    with pytest.raises(ApiError) as caught:
        aliases.back("champion")
    assert caught.value.status == 409 and caught.value.error == "no_previous_version"
    assert aliases.get("champion") == "1.0.0"  # a refused rollback changes nothing
    with pytest.raises(ApiError) as missing:
        aliases.require("challenger")
    assert missing.value.status == 404 and "aliases: champion" in str(missing.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aliases.json"]  # no temp files

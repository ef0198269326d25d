"""stage=lint: jsonschema plus name checks over every YAML, all errors listed at once."""
import textwrap

from conftest import run_cli
from mtpmanifest.lint import lint_conf, shipped_conf_dir, yaml_files

BROKEN_ARCH = textwrap.dedent("""\
    name: not_the_file_name
    gguf_arch: DEEPSEEK2
    hf_architectures: [X]
    layers: {trunk: num_hidden_layers, mtp: 1}
    vocab: {pre: deepseek-v3}
    colour: blue
    tensors:
      - {source: "model.layers.{bid}.w", target: ATTN_NORM, role: sideways}
      - {source: "model.layers.{bid}.v"}
    """)


def test_every_shipped_yaml_is_valid():
    files = yaml_files(shipped_conf_dir())
    assert {p.parent.name for p in files} >= {"arch", "quant"}
    assert lint_conf() == []


def test_all_errors_are_listed_at_once(tmp_path):
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "broken.yaml").write_text(BROKEN_ARCH)
    (tmp_path / "arch" / "code.yaml").write_text("name: code\n_target_: os.system\n")
    (tmp_path / "quant").mkdir()
    (tmp_path / "quant" / "q9.yaml").write_text("name: q9\nfile_type: MOSTLY_Q9\ndefault_type: Q9_K\n")
    errors = lint_conf([tmp_path])
    text = "\n".join(errors)
    assert "colour" in text  # unknown key
    assert "sideways" in text  # bad role
    assert "tensors/1" in text  # neither target nor targets
    assert "not_the_file_name" in text
    assert "_target_" in text
    assert "MOSTLY_Q9" in text and "Q9_K" in text
    assert len(errors) >= 7


def test_semantic_names_checked(tmp_path):
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "x.yaml").write_text(textwrap.dedent("""\
        name: x
        gguf_arch: NOT_AN_ARCH
        hf_architectures: [X]
        layers: {trunk: num_hidden_layers, mtp: "1 +"}
        vocab: {pre: x}
        metadata: [{key: LLM.NO_SUCH_KEY, type: uint32, value: hidden_size}]
        tensors: [{source: "a.{bid}.w", target: NO_SUCH_TENSOR, op: nope}]
        """))
    text = "\n".join(lint_conf([tmp_path]))
    for needle in ("NOT_AN_ARCH", "LLM.NO_SUCH_KEY", "NO_SUCH_TENSOR", "unknown op 'nope'", "'1 +'"):
        assert needle in text


def test_cli_lint(tmp_path):
    ok = run_cli("stage=lint", cwd=tmp_path, check_rc=0)
    assert "all shipped configs are valid" in ok.stdout
    (tmp_path / "user" / "arch").mkdir(parents=True)
    (tmp_path / "user" / "arch" / "broken.yaml").write_text(BROKEN_ARCH)
    bad = run_cli("stage=lint", f"other={tmp_path / 'user'}", cwd=tmp_path, check_rc=2)
    assert bad.stdout.count("broken.yaml") >= 4  # the full list
    assert "lint: 4 error(s)" in bad.stderr  # and one line saying so

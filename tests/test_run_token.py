"""A run in a folder path that an earlier, deleted run used never loads that run's adapters."""

import shutil

from flwr.app import ConfigRecord, Context, RecordDict

from fedsem_app import protocol as p
from fedsem_app.clients.export import node_adapter_file, remember_run
from fedsem_app.final import run_config_record
from fedsem_app.run.results import make_run_folder, run_token


def node_context() -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config={},
    )


def adapter_path(tmp_path, folder):
    context = node_context()
    remember_run(context, run_config_record(folder, 3, True))
    return node_adapter_file(tmp_path / "cache", context, "tiny-llama")


def test_each_new_run_folder_gets_its_own_token(tmp_path):
    first = make_run_folder(tmp_path, "study-run", "fedsem")
    token = run_token(first)
    assert len(token) == 32 and run_token(first) == token  # read back unchanged (resume)
    second = make_run_folder(tmp_path, "study-run", "fedsem")  # the name is taken: a suffix
    assert second.name == "study-run-2" and run_token(second) != token


def test_a_reused_folder_path_is_another_run_for_the_clients(tmp_path):
    folder = make_run_folder(tmp_path, "study-run", "fedsem")
    before = adapter_path(tmp_path, folder)
    # The same run (a resume reads the same folder and token): the same adapter file.
    assert adapter_path(tmp_path, folder) == before
    # The run is deleted and a new one made at the same path: another file.
    shutil.rmtree(folder)
    again = make_run_folder(tmp_path, "study-run", "fedsem")
    assert again == folder
    assert adapter_path(tmp_path, again) != before


def test_the_token_travels_in_every_config(tmp_path):
    folder = make_run_folder(tmp_path, "r", "local")
    record = run_config_record(folder, 2, False)
    assert isinstance(record, ConfigRecord)
    assert record[p.RUN_TOKEN] == run_token(folder) and record[p.RUN_FOLDER] == str(folder)

from controller.fabric.model import ConnectionPlan
from controller.fabric.store import Store
from tests.unit.test_fabric_paths import plan_on_line


def test_store_round_trip_survives_reopen(tmp_path):
    path = tmp_path / "s.sqlite"
    store = Store(path)
    plan = plan_on_line()
    store.put(plan)
    store.put(plan.model_copy(update={"state": "up", "revision": 2}))
    store.set_meta("pipeline_cookie", "42")
    store.close()
    again = Store(path)
    got = again.all()
    assert len(got) == 1 and isinstance(got[0], ConnectionPlan)
    assert got[0].state == "up" and got[0].revision == 2
    assert got[0].a_to_b.path == plan.a_to_b.path
    assert again.get_meta("pipeline_cookie") == "42"
    again.delete(plan.id)
    assert again.get(plan.id) is None

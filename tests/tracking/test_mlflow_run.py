"""The tracker against a real local MLflow (sqlite): batches larger than MLflow's per-request limits all land,
because ``MlflowClient.log_batch`` splits them itself (coloc no longer chunks by hand)."""

from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from coloc_ray.tracking import Tracker, read_run
from coloc_ray.tracking.mlflow_run import metric_history


def test_more_than_one_batch_of_params_and_metrics_reads_back(tracking_uri):
    n_params, n_metrics = MAX_PARAMS_TAGS_PER_BATCH * 11, MAX_METRICS_PER_BATCH + 100  # 1100 each
    params = {"cfg": {f"p{i}": i for i in range(n_params)}}
    metrics = {f"m/{i}": float(i) for i in range(n_metrics)}
    with Tracker(tracking_uri, run_name="big") as t:
        t.log_params(params)
        t.log_metrics(metrics, step=3)
        t.log_series("layer_score", [0.5 * i for i in range(n_metrics)], start_step=1)
    run = read_run(t.run_id, tracking_uri)
    assert run["params"] == {f"cfg.p{i}": str(i) for i in range(n_params)}
    assert run["metrics"] == {**metrics, "layer_score": 0.5 * (n_metrics - 1)}
    assert metric_history(t.run_id, "layer_score", tracking_uri) == [(1 + i, 0.5 * i) for i in range(n_metrics)]
    assert metric_history(t.run_id, "m/7", tracking_uri) == [(3, 7.0)]


def test_long_param_value_is_truncated_by_mlflow_and_long_key_shortened(tracking_uri):
    with Tracker(tracking_uri) as t:
        t.log_params({"v": "x" * 7000, "k" * 300: 1})
    params = read_run(t.run_id, tracking_uri)["params"]
    assert params["v"] == "x" * 6000
    assert params["k" * 250] == "1"

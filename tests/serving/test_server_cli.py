def test_serve_refuses_when_an_external_backend_is_configured(cli):
    result = cli("serve", env={"CARELOOP_SERVING_BACKEND": "vllm"})
    assert result.returncode == 1
    assert "CARELOOP_SERVING_BACKEND=vllm" in result.stderr and "embedded engine" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_without_a_model_names_the_fix(cli):
    result = cli("serve", env={"CARELOOP_BASE_MODEL": "/nonexistent/model", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert "CARELOOP_BASE_MODEL" in result.stderr and "Traceback" not in result.stderr

"""A test server for `gen serve`'s app (uvicorn in a thread), shared by test_serve.py and
test_playground.py. A module of its own, not conftest.py: `from conftest import ...` may find
tests/reliability/conftest.py instead, and a subprocess without pytest imports this too."""
import contextlib
import threading
import time


@contextlib.contextmanager
def running_server(app, timeout: float = 30.0):
    """Serve an ASGI app with uvicorn on 127.0.0.1 and an ephemeral port, in a thread; yield its
    base URL; stop it (as SIGTERM would: in-flight requests finish) on the way out."""
    import uvicorn

    from gen.runtime.server import listening_socket

    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        assert not thread.is_alive(), "the test server did not stop"

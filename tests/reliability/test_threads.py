"""One OnnxModel shared by threads: each thread's text depends only on its own prompt,
sampler and seed (the thread-safety contract in gen.runtime.onnx_model)."""
import threading

from gen.runtime.onnx_model import OnnxModel

SAMPLERS = ["top_k:k=10", "repetition_penalty:penalty=1.3", "mirostat:tau=3.0", "top_p:p=0.9"]


def request(number: int) -> dict:
    return {"prompts": ["ROMEO:", "JULIET:\n"][: 1 + number % 2], "sampler": SAMPLERS[number % len(SAMPLERS)],
            "seed": 100 + number, "max_new_tokens": 120}


def test_eight_threads_sharing_one_generator_get_their_single_threaded_texts(workspace):
    generator = OnnxModel(workspace / "model.onnx", threads=1)
    expected = [generator.generate(**request(number)) for number in range(8)]
    results: dict[int, list[str]] = {}
    errors = []
    start = threading.Barrier(8)

    def worker(number: int) -> None:
        try:
            start.wait(timeout=30)
            for _ in range(3):  # several rounds, so calls overlap in every order
                results.setdefault(number, []).append(generator.generate(**request(number)))
        except Exception as error:  # reported below, with the thread it happened in
            errors.append((number, repr(error)))

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    for number in range(8):
        assert results[number] == [expected[number]] * 3
    assert len({tuple(texts) for texts in expected}) == 8  # the requests really differ

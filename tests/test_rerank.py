"""POST /v1/rerank for Continue's rerankers: relayed to an OpenAI-compatible server's /rerank and
through litellm's Cohere rerank provider (both the fake upstream), answered with `results[]` and
`data[]`; a backend that cannot rerank is a clear 400 (the local model, in test_clients_local.py)."""

from __future__ import annotations

import httpx

DOCS = ["the cat sat on the mat", "stock prices fell today", "a cat and a dog", "nothing here"]


def rerank(gw, **body) -> httpx.Response:
    return httpx.post(gw.url + "/v1/rerank", headers={"Authorization": f"Bearer {gw.master_key}"}, json=body,
                      timeout=60)


def test_rerank_on_an_openai_compatible_server(clients_gateway, upstream):
    r = rerank(clients_gateway, model="echo", query="cat on mat", documents=DOCS, top_n=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"] == body["data"] and [e["index"] for e in body["results"]] == [0, 2]
    assert body["results"][0] == {"index": 0, "relevance_score": 1.0} and body["model"] == "echo"
    assert upstream.requests[-1] == {"model": "echo-upstream", "query": "cat on mat", "documents": DOCS, "top_n": 2}
    assert upstream.headers[-1]["authorization"] == "Bearer upstream-secret"


def test_rerank_through_litellm(clients_gateway, upstream):
    r = rerank(clients_gateway, model="cohere-rerank", query="cat", documents=DOCS, top_n=3, return_documents=True)
    assert r.status_code == 200, r.text
    ranked = r.json()["data"]
    assert len(ranked) == 3 and ranked[0]["relevance_score"] == 1.0 and {ranked[0]["index"], ranked[1]["index"]} == {0, 2}
    assert upstream.requests[-1]["query"] == "cat" and upstream.headers[-1]["authorization"] == "Bearer cohere-secret"


def test_bad_rerank_requests(clients_gateway):
    r = rerank(clients_gateway, model="echo", query="x", documents=[])
    assert r.status_code == 400 and r.json()["error"]["param"] == "documents"
    r = rerank(clients_gateway, model="echo", documents=["a"])
    assert r.status_code == 400 and r.json()["error"]["param"] == "query"

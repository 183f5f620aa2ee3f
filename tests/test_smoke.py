from tests.server import Server


def test_upload_then_download_round_trip(server: Server, token: str) -> None:
    data = bytes(range(256)) * 5000
    assert server.put_file(token, "a.bin", data).status == 201
    resp = server.request("GET", "/download/a.bin", token=token)
    assert resp.status == 200
    assert resp.body == data

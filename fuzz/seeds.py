#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target under fuzz/corpus/<target>/.

Hand-made, meaningful inputs in each target's input format (see the target's doc comment):
the real plugin configs of tests/cases/*.yaml, sample JSON / form / multipart bodies with
edit scripts, Accept values, paths from Kong's spec, encoded rate-limit buckets and request
sequences. Run it again after changing a format: `python3 fuzz/seeds.py`.
"""

import hashlib
import json
import os
import struct
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECTION = b"\n--8<--\n"


def b(x):
    return x.encode() if isinstance(x, str) else bytes(x)


def write(target, data, name=None):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    data = b(data)
    name = name or hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def cases(plugin):
    with open(os.path.join(ROOT, "tests", "cases", plugin + ".yaml")) as f:
        return yaml.safe_load(f)["cases"]


def configs():
    for plugin, target in [
        ("request-size-limiting", "config_request_size_limiting"),
        ("rate-limiting", "config_rate_limiting"),
        ("request-transformer", "config_request_transformer"),
    ]:
        seen = set()
        for case in cases(plugin):
            text = json.dumps(case.get("config") or {}, separators=(",", ":"))
            if text not in seen:
                seen.add(text)
                write(target, text)
        write(target, "")
        write(target, "{}")
    write("config_request_transformer",
          '{"replace":{"headers":["Authorization:Bearer {vault://env/TOKEN}",'
          '"x-user:{vault://env/json/user}"]},"add":{"headers":["x-c:{vault://env/CRLF}"]}}')
    write("config_request_transformer",
          '{"add":{"headers":["x-id:$(uri_captures.id or \'none\')"]},'
          '"wasmgate":{"route_paths":{"users":["/u/(?<id>\\\\d+)"]},"hold_headers":true,'
          '"unparsable_body":"pass","body_buffer_limit":1024}}')
    write("config_rate_limiting",
          '{"minute":5,"hour":100,"limit_by":"header","header_name":"x-team",'
          '"window_type":"sliding","max_identifiers":64,"error_code":418,'
          '"error_message":"slow down","hide_client_headers":true,"policy":"local",'
          '"redis":{"host":null},"fault_tolerant":false}')
    # Finding 4 (docs/FUZZING.md): numbers that serde_json's default float parser read a few
    # units in the last place off.
    long = "1" * 82 + "5" * 24 + "1" * 20 + "5" * 11 + "1" * 55 + "5" * 5 + "20"
    write("config_rate_limiting", '{"second":%s}' % long)
    write("config_rate_limiting", '{"second":1.1111111111111111e198,"minute":%s}' % long)


def kong_error():
    accepts = [
        None, b"", b"*/*", b"text/plain", b"text/html;q=0.9, application/json;q=0.1",
        b"application/xml", b"text/*", b"image/png, text/html;q=0.9",
        b"text/html;level=1;q=0.2, application/json;q=0.1", b"Text/HTML",
        b"application/json;q=0.9, text/plain;q=2", b"\xff\xfe, text/plain;q=0.5",
        b"text/html;q=0, application/xml", b"application/grpc", b"\x0btext/html",
        b"text/plain ; q=0.5 ; charset=utf-8, text/html;q=0.500",
    ]
    messages = [b"Request size limit exceeded", b"API rate limit exceeded",
                b"<a href=\"x\">'&'</a>", "caf\u00e9 \u2603".encode()]
    for i, accept in enumerate(accepts):
        status = [413, 429, 500, 411, 417, 400][i % 6]
        message = messages[i % len(messages)]
        data = struct.pack("<H", status) + message
        if accept is not None:
            data += b"\0" + accept
        write("kong_error", data)


def paths():
    for p in [
        b"", b"/", b"/a/b/c/", b"/a%2Fb%2Fc/", b"/%20%21%23%24%25%26%27%28%29%2A%2B%2C%2F%3A",
        b"/a%2fb%2fc/", b"/f%6f%6f", b"/%2E", b"/./.././../", b"/a/b/c/./../../g",
        b"mid/content=5/../6", b"/////", b"/a//b//", b"/endel%C3%B8st",
        b"/%C3%A4/a/%2e./a%2E//a/%2e/./a/../a/%2e%2E/%5f%99%af%2f%2F", b"/v1//items",
        b"/v1/%69tems", b"//v1/x/../items", b"/%2541", b"/%%34%31", b"/%00%ff", b"../a/./b",
    ]:
        write("path_normalize", p)


def json_object():
    bodies = [
        b'{"gone":1,"old":{"k":[1, 2]},"rep":"o","arr":[1],"str":"1","big":12345678901234567890.5}',
        b'{"role":"admin","user":"u","role":"x"}', b'{"a":false,"b":null,"c":{}}', b"[1,2]",
        b'{"a":1', b'{"role":"admin","x":NaN}', b'{"r\\u006fle":1,"\\ud83d\\ude00":2}',
        b'{"n":1e400,"d":[[[[]]]]}', b"", b" {} ", b'{"k":"\\u0000\\n"}',
    ]
    script = (b"rgone\nnold=new\nprep=r\npabsent=x\naadded=v:1\narep=not-added\n"
              b"Aarr=2\nAstr=2\nAfresh=f\nAc=1\nnrole=a\\x00b\nAk=\\xff")
    for body in bodies:
        write("json_object", body + SECTION + script)
        write("json_object", body)


def urlencoded():
    queries = [b"keep=%2F+x&toremove=1&old=o&rep=1&multi=1&odd=%zz&rep=2",
               b"gone=1&old=o%2f+x&rep=1&m=1&odd=%zz", b"a&&b=&=c&", b"%ff%FE%4", b"", b"&"]
    script = (b"rtoremove\nnold=new\nnabsent=never\nprep=r v\npnope=x\naadded=a&b=c\n"
              b"akeep=not-added\nAmulti=2\nAmulti=3\nr\nA=\\x00")
    for q in queries:
        write("urlencoded", q + SECTION + script)


def multipart():
    ct = b"multipart/form-data; boundary=XyZ"
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"role\"\r\n\r\nadmin\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a; name=zzz\"\r\n"
            b"Content-Type: text/plain\r\n\r\nfile body\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name*=utf-8''caf%C3%A9\r\n\r\nv\r\n"
            b"--XyZ--\r\n")
    script = b"rrole\nnf=file\npcaf\\xc3\\xa9=x\naadded=a\\x22b\\x0d\\x0a\nAignored=1"
    write("multipart", ct + SECTION + body + SECTION + script)
    write("multipart", b'multipart/form-data; boundary="q b"' + SECTION +
          b"pre\r\n--q b\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--q b--" +
          SECTION + b"aa=2\nrb")
    write("multipart", b"B" + SECTION + b"--B\r\nX: y\r\n\r\n--B\r\n--B--")
    write("multipart", ct + SECTION + b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"; "
          b"name=\"b\"\r\n\r\nx\r\n--XyZ--")
    for v in [b"form-data; name=\"role\"", b"form-data; filename=\"a; name=zzz\"; name=\"role\"",
              b"form-data; name*=UTF-8''%72ole; name=role", b"form-data; name=\"a\\\"b\"",
              b"multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
              b"attachment; name*=iso-8859-1'en'%E9", b"text/plain; a=1;; b=\"x\\\\y\";",
              b"form-data; name=a; name=b"]:
        write("multipart_params", v)


def template():
    for t, lookups in [
        ("$(headers.x_api_key)", "hx-api-key=k1"),
        ("key=$(headers[\"x-api-key\"])!", "hx-api-key=\\x80\\xff\\x0d\\x0a"),
        ("/u/$(uri_captures.user)/$(uri_captures[1])", "cuser=bob\nc1=bob"),
        ("$(query_params.q or headers.h or 'none')", "qq=v q"),
        ("Bearer {vault://env/TOKEN}", ""),
        ("{vault://env/missing}", ""),
        ("$(type(headers.x))", ""),
        ("$NAME and $( unbalanced", ""),
        ("plain text", ""),
        ("$('a' or \"b\")$(headers['X-Y'])", "hx-y=1"),
    ]:
        write("template", t.encode() + SECTION + lookups.encode())


def stream():
    def req(config, flags, chunk, method, path, headers, body):
        head = bytes([config, flags, chunk]) + method + b"\n" + path + b"\n"
        head += b"".join(h + b"\n" for h in headers)
        return head + b"\n" + body

    json_body = b'{"role":"admin","user":"u","x":1}'
    form_body = b"role=admin&user=u&token=t"
    multi_ct = b"content-type:multipart/form-data; boundary=B"
    multi_body = (b"--B\r\nContent-Disposition: form-data; name=\"role\"\r\n\r\nadmin\r\n"
                  b"--B\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nu\r\n--B--\r\n")
    for config in range(8):
        write("transformer_stream", req(config, 0, 255, b"POST", b"/u/7?q=1&token=t&p=x",
              [b"content-type:application/json", b"content-length:%d" % len(json_body),
               b"x-in:value", b"x-kind:kk", b"x-api-key:a", b"x-api-key:evil", b"x-old:o",
               b"x-new:n", b"x-secret:s"], json_body))
        write("transformer_stream", req(config, 2, 3, b"POST", b"/u/%0a?q=--B",
              [b"content-type:application/x-www-form-urlencoded", b"x-q:\x00\xff"], form_body))
        write("transformer_stream", req(config, 0, 7, b"PUT", b"/",
              [multi_ct, b"content-length:5", b"accept:text/plain"], multi_body))
    write("transformer_stream", req(0, 0, 255, b"POST", b"/",
          [b"content-type:application/json", b"content-encoding:gzip"], json_body))
    write("transformer_stream", req(0, 0, 255, b"POST", b"/",
          [b"content-type:text/plain", b"content-type:application/json"], json_body))
    write("transformer_stream", req(1, 1, 255, b"GET", b"/", [b"accept:text/html"], b""))
    write("transformer_stream", req(4, 1, 255, b"GET", b"/",
          [b"x-in:a\rb", b"x-api-key:k"], b""))
    write("transformer_stream", req(5, 0, 255, b"POST", b"/?token=1",
          [b"content-type:application/x-www-form-urlencoded"], b"a=1&token=2&b=%20"))


def buckets():
    def entry(owner, last, windows):
        out = struct.pack("<QQq", owner & (2**64 - 1), owner >> 64, last) + bytes([len(windows)])
        for period, start, count, previous in windows:
            out += bytes([period]) + struct.pack("<qQQ", start, count, previous)
        return out

    t0 = 1_709_208_000
    write("bucket_codec", b"\x02\x00")
    write("bucket_codec", b"\x02\x01" + entry(7, t0 * 1000, [(0, t0, 3, 0)]))
    write("bucket_codec", b"\x02\x02" + entry(2**127 + 5, t0 * 1000, [(0, t0, 1, 2), (2, t0, 5, 0)])
          + entry(9, -1, []))
    write("bucket_codec", b"\x02\x01" + entry(1, 0, [(0, 0, 0, 0), (0, 0, 0, 0)]))
    write("bucket_codec", b"\x03\x00")
    write("bucket_codec", b"\x02\x09" + b"\x00" * 225)


def limiter():
    def field(x):
        return b"\xff" if x is None else bytes([len(x)]) + x

    def request(step, address=b"10.0.0.1:5000", header=None, path=b"/v1/items", cluster=None,
                accept=None):
        return bytes([step]) + field(address) + field(header) + field(path) + field(cluster) + field(accept)

    for knobs in [0, 1, 2, 3, 4 | 1, 8 | 2, 16 | 3, 32, 64, 96]:
        head = bytes([knobs, 0b101, 2, 3]) + (b"\x05" if knobs & 16 else b"")
        head += struct.pack("<H", 15250)
        reqs = b"".join([
            request(0), request(0), request(0, header=b"team-a"), request(1, path=b"/v1//items"),
            request(0, path=b"/v1/%69tems?x=1"), request(0, address=b"[::1]:80"),
            request(4, header=b"\xff\x00"), request(0, cluster=b"backend", accept=b"text/plain"),
            request(5), request(0), request(6, address=b"\xff:\xfe"), request(0),
        ])
        write("limiter_decide", head + reqs)


def body_counter():
    def field(x):
        return b"\xff" if x is None else bytes([len(x)]) + x

    for size, unit, flags, cl, expect, accept, chunks in [
        (1, 1, 0, b"1024", None, None, []),
        (1, 1, 0, b"1025", b" 100-Continue ", b"text/plain", []),
        (1, 1, 4, None, b"100-continue", None, [1000, 24, 1]),
        (1, 1, 1, None, None, None, []),
        (1, 1, 1 | 4, None, None, None, [512, 512, 1]),
        (1, 1, 1 | 2, None, None, b"application/xml", []),
        (10, 0, 0, b"lots", None, None, [5, 5, 1]),
        (0, 0, 0, b" 99999999999999999999999 ", None, None, []),
        (128, 2, 8 | 16, b"\xff12", b"\xff100-continue", b"\xfftext/plain", [65535, 65535]),
    ]:
        data = struct.pack("<H", size) + bytes([unit, flags]) + field(cl) + field(expect) + field(accept)
        data += b"".join(struct.pack("<H", c) for c in chunks)
        write("body_counter", data)


def sync_frames():
    h = "0" * 64
    for name, frame in [
        ("basic_info", {"type": "basic_info", "node_id": "dp-1", "hostname": "host",
                        "version": "0.1.0", "plugins": [{"name": "rate-limiting", "version": "1"}],
                        "modules": [{"file": "rate_limiting.wasm", "sha256": h}],
                        "config_hash": h}),
        ("basic_info_named", {"type": "basic_info", "node_id": "n", "hostname": "h", "version": "1",
                              "control_plane_id": "7f0e", "config_hash": None}),
        ("applied", {"type": "applied", "config_version": 3, "config_hash": h}),
        ("error", {"type": "error", "config_version": 4, "config_hash": h,
                   "message": "services.s.plugins.rate-limiting.config.second: 0 < 1"}),
        ("ping", {"type": "ping", "config_hash": h}),
        ("ping_null", {"type": "ping", "config_hash": None}),
        ("reconfigure", {"type": "reconfigure", "config_version": 1, "config_hash": h,
                         "config": "{}", "modules": []}),
        ("pong", {"type": "pong"}),
    ]:
        write("sync_frame", json.dumps(frame).encode(), name)


def main():
    configs()
    sync_frames()
    kong_error()
    paths()
    json_object()
    urlencoded()
    multipart()
    template()
    stream()
    buckets()
    limiter()
    body_counter()
    return 0


if __name__ == "__main__":
    sys.exit(main())

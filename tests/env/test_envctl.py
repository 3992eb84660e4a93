"""Tests of the environment's own code: the fault peer's wire handling and rules, and that `envctl.py down`
leaves nothing running. `make test` runs these after the environment went down."""

import struct
import sys
import time
from pathlib import Path

import bson

sys.path.insert(0, str(Path(__file__).parent))
import envctl  # noqa: E402
import faultpeer  # noqa: E402


def test_no_process_of_the_environment_remains_after_down():
    assert envctl.running_components() == []
    assert envctl.marked_processes() == []


def op_msg(request_id, body, sequences=None):
    return faultpeer.Message(request_id, 0, 0, body, sequences or {}).encode()


def test_op_msg_round_trips_with_document_sequences():
    raw = op_msg(7, {"insert": "orders", "$db": "shop", "ordered": False}, {"documents": [{"_id": 1}, {"_id": 2}]})
    length, request_id, _, opcode = struct.unpack("<iiii", raw[:16])
    assert (length, request_id, opcode) == (len(raw), 7, faultpeer.OP_MSG)
    msg = faultpeer.Message.parse(raw[:16], raw[16:])
    assert msg.body["insert"] == "orders"
    assert msg.sequences == {"documents": [{"_id": 1}, {"_id": 2}]}


def test_checksum_flag_is_understood_and_dropped_on_reencode():
    body = bytes(struct.pack("<I", faultpeer.FLAG_CHECKSUM)) + b"\x00" + bson.encode({"ping": 1}) + b"\x00\x00\x00\x00"
    header = struct.pack("<iiii", 16 + len(body), 3, 0, faultpeer.OP_MSG)
    msg = faultpeer.Message.parse(header, body)
    assert msg.body == {"ping": 1}
    assert struct.unpack_from("<I", msg.encode(), 16)[0] & faultpeer.FLAG_CHECKSUM == 0


def test_reply_answers_the_request():
    raw = faultpeer.reply_to(42, {"ok": 0, "code": 286})
    _, _, response_to, _ = struct.unpack("<iiii", raw[:16])
    assert response_to == 42
    assert faultpeer.Message.parse(raw[:16], raw[16:]).body == {"ok": 0, "code": 286}


def change_stream(coll):
    return {"aggregate": coll, "pipeline": [{"$changeStream": {}}], "$db": "shop"}


def test_rules_match_command_collection_skip_and_times():
    rules = faultpeer.Rules()
    rules.add({"command": "aggregate", "changeStream": True, "collection": "orders", "skip": 1, "times": 1,
               "reply": {"ok": 0, "code": 286}})
    assert rules.match("aggregate", {"aggregate": "orders", "pipeline": [{"$match": {}}]}) is None
    assert rules.match("aggregate", change_stream("other")) is None
    assert rules.match("aggregate", change_stream("orders")) is None  # skipped
    assert rules.match("aggregate", change_stream("orders"))["reply"]["code"] == 286
    assert rules.match("aggregate", change_stream("orders")) is None  # used up
    assert rules.snapshot()["commands"] == {"aggregate": 5, "changeStreamAggregates": 4}


def test_a_wildcard_rule_for_a_while_is_an_outage_of_one_database():
    rules = faultpeer.Rules()
    rules.add({"command": "*", "database": "shop", "forMs": 200, "closeConnection": True})
    assert rules.match("insert", {"insert": "orders", "$db": "shop"})["closeConnection"]
    assert rules.match("find", {"find": "orders", "$db": "shop"}) is not None
    assert rules.match("insert", {"insert": "orders", "$db": "other"}) is None
    time.sleep(0.25)
    assert rules.match("insert", {"insert": "orders", "$db": "shop"}) is None  # over


def test_an_app_name_rule_takes_only_that_application_s_connections():
    rules = faultpeer.Rules()
    rules.add({"command": "find", "appName": "sluice/shop/orders/0", "reply": {"ok": 0, "code": 13}})
    find = {"find": "oplog.rs", "$db": "local"}
    assert rules.match("find", find) is None
    assert rules.match("find", find, "sluice/shop/other/0") is None
    assert rules.match("find", find, "sluice/shop/orders/0")["reply"]["code"] == 13


def test_rules_are_checked():
    rules = faultpeer.Rules()
    for bad in ({}, {"command": "insert"}, {"command": "find", "failIndexes": [0]},
                {"command": "insert", "reply": {}, "closeConnection": True},
                {"command": "aggregate", "postBatchResumeToken": "clock"},
                {"command": "*", "closeConnection": True, "forMs": 0}):
        try:
            rules.add(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


def test_post_batch_resume_token_is_added_to_empty_batches_only():
    empty = faultpeer.Message(1, 9, 0, {"cursor": {"id": 4, "ns": "db.c", "nextBatch": []}, "ok": 1.0}, {}).encode()
    body = faultpeer.Message.parse(empty[:16], empty[16:]).body
    assert "postBatchResumeToken" not in body["cursor"]
    patched = faultpeer.add_post_batch_resume_token(empty)
    token = faultpeer.Message.parse(patched[:16], patched[16:]).body["cursor"]["postBatchResumeToken"]["_data"]
    assert len(token) == 16 and int(token[:8], 16) > 1_700_000_000
    full = faultpeer.Message(1, 9, 0, {"cursor": {"id": 4, "nextBatch": [{"_id": 1}]}, "ok": 1.0}, {}).encode()
    assert faultpeer.add_post_batch_resume_token(full) == full

from __future__ import annotations

import io
import logging

from agent.logs import RateLimit, _OnlyNoisy


def test_a_broker_outage_flood_becomes_one_line_per_interval_and_agent_lines_pass():
    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_OnlyNoisy(RateLimit(30.0, clock=lambda: now[0])))
    client, agent = logging.getLogger("aiokafka.conn"), logging.getLogger("agent.stream.runtime")
    for logger in (client, agent):
        logger.addHandler(handler)
        logger.propagate = False
    try:
        for second in range(60):  # a minute of outage, 70 reconnect errors a second
            now[0] = float(second)
            for _ in range(70):
                client.error("Unable connect to node with id %s", 111)
            agent.warning("offset commit failed")
    finally:
        for logger in (client, agent):
            logger.removeHandler(handler)
            logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert sum("Unable connect" in line for line in lines) == 2
    assert any("more like this" in line for line in lines)
    assert sum("offset commit failed" in line for line in lines) == 60

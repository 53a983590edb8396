"""The local server helpers start real processes that answer, and restart on the same port."""
import paho.mqtt.client as mqtt
import redis


def test_redis_answers_and_restarts(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    assert r.ping() is True
    redis_server.stop()
    redis_server.start()
    assert redis.Redis.from_url(redis_server.url).ping() is True


def test_mosquitto_accepts_a_connection(mosquitto):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
    assert c.connect("127.0.0.1", mosquitto.port) == mqtt.MQTT_ERR_SUCCESS
    c.disconnect()

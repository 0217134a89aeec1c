"""`kubectl mqtt`: the kubectl plugin for day-to-day work with a running MqttInstance (its status, what
devices publish), through the API server only: it port-forwards to the broker and logs in with the
instance's admin Secret, which it never prints."""

module github.com/sapcc/mosquitto-exporter

go 1.14

require (
	github.com/codegangsta/cli v1.20.1-0.20170813145949-f017f86fccc5
	github.com/eclipse/paho.mqtt.golang v1.3.5
	github.com/prometheus/client_golang v1.11.0
)

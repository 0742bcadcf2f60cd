# Prometheus from Debian's package, for the compose test where no registry is in reach
# (scripts/docker-env.sh images builds it). It behaves as prom/prometheus does where compose
# relies on it: the entrypoint is the binary, it runs as nobody and writes under /prometheus.
ARG BASE_IMAGE
FROM ${BASE_IMAGE} AS unpack
COPY prometheus.deb /tmp/
RUN dpkg-deb -x /tmp/prometheus.deb /tmp/prometheus

FROM ${BASE_IMAGE}
COPY --from=unpack /tmp/prometheus/usr/bin/prometheus /tmp/prometheus/usr/bin/promtool /bin/
COPY --from=unpack /tmp/prometheus/usr/share/prometheus /usr/share/prometheus
RUN mkdir -p /prometheus /etc/prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

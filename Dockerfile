# kpx image: build with the full Node image, run on the slim one.
#   docker build -t kpx:dev .
# The DaemonSet in manifests/ runs `kpx run --config /etc/kpx/config.yaml --hostname-override $(NODE_NAME)`.

FROM node:20.19-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY src ./src
# npm ci runs the prepare script, which compiles src/ to dist/
RUN npm ci --no-audit --no-fund \
 && npm prune --omit=dev --no-audit --no-fund

FROM node:20.19-bookworm-slim
# iptables ships both backends (iptables-nft and iptables-legacy); kpx picks one at start
# the way kube-proxy's image does (kubelet's hint chains, then where rules already are).
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset ipvsadm conntrack iproute2 kmod \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/kpx
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/bin ./bin
COPY --from=build /src/dist ./dist
# node's flags are bin/kpx.js's shebang's (a 1 MiB young generation; see that file)
ENTRYPOINT ["node", "--max-semi-space-size=1", "/opt/kpx/bin/kpx.js"]
CMD ["run"]

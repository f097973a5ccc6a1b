# kpx image. Build: docker build -t kpx .
FROM node:20-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset conntrack iproute2 ipvsadm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/kpx
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY src ./src
RUN npm ci --no-audit --no-fund && npm prune --omit=dev
ENTRYPOINT ["node", "/opt/kpx/bin/kpx.js"]
CMD ["run"]

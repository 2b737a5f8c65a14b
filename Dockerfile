# Builds a self-contained, trimmed xendisk and runs it as the dom0 block-backend service.
#   docker build -t xendisk .
#   docker run --privileged -v /dev/xen:/dev/xen -v /var/run/xenstored:/var/run/xenstored \
#              -v /var/lib/xendisk:/var/lib/xendisk -v /etc/xendisk:/etc/xendisk:ro xendisk
# Without Xen (for a look at the simulated service):  docker run --rm xendisk serve --simulate
FROM mcr.microsoft.com/dotnet/sdk:10.0-bookworm-slim AS build
WORKDIR /src
COPY Directory.Build.props Directory.Packages.props XenDisk.sln ./
COPY src/ src/
RUN dotnet publish src/XenDisk.Cli/XenDisk.Cli.csproj -c Release -r linux-x64 --self-contained \
      -p:PublishTrimmed=true -p:InvariantGlobalization=true -o /out

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libxengnttab1 libxenevtchn1 libxenstore4 qemu-utils ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/lib/xendisk/
RUN ln -s /usr/lib/xendisk/xendisk /usr/bin/xendisk && mkdir -p /var/lib/xendisk /etc/xendisk
VOLUME /var/lib/xendisk
ENTRYPOINT ["/usr/bin/xendisk"]
CMD ["serve"]

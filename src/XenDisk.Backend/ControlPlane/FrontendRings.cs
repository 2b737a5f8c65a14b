using System.Numerics;
using XenDisk.Abi;

namespace XenDisk.Backend.ControlPlane;

/// <summary>One queue's ring as the frontend described it: the grant refs of its pages and its event channel.</summary>
internal sealed record FrontendQueue(int Index, uint EventChannel, uint[] RingRefs);

/// <summary>
/// The frontend's ring details (blkif.h "Feature and Parameter Negotiation", frontend-written keys),
/// read once when the frontend reaches Initialised and validated against what we offered.
/// </summary>
internal sealed record FrontendRings(BlkifProtocol Protocol, int RingPageCount, bool PersistentGrants, IReadOnlyList<FrontendQueue> Queues)
{
    /// <summary>
    /// Reads the keys below the frontend directory through <paramref name="read"/> (a path relative to
    /// that directory, such as "queue-1/ring-ref0"; null when absent). Throws
    /// <see cref="DeviceSetupException"/> for anything missing, malformed, or beyond what we offered.
    /// </summary>
    public static FrontendRings Read(Func<string, string?> read, int maxQueues, int maxRingPageOrder)
    {
        string? protocolText = read(BlkifKeys.Protocol);
        if (!BlkifProtocolNames.TryParse(protocolText, out BlkifProtocol protocol))
        {
            throw new DeviceSetupException($"unknown frontend \"protocol\" \"{DeviceConfiguration.Printable(protocolText!)}\"");
        }

        // xenbus_read_unsigned semantics: an absent or unreadable feature key means "not offered".
        bool persistent = BackendPaths.TryParseDecimal(read(BlkifKeys.FeaturePersistent), out uint persistentValue) && persistentValue != 0;

        // blkif.h "multi-queue-num-queues": absent means one queue whose keys sit directly in the
        // frontend directory; more than one puts each queue's keys in a "queue-N" subdirectory.
        int queueCount = 1;
        string? queuesText = read(BlkifKeys.MultiQueueNumQueues);
        if (queuesText is not null)
        {
            if (!BackendPaths.TryParseDecimal(queuesText, out uint requested))
            {
                throw new DeviceSetupException($"bad \"multi-queue-num-queues\" \"{DeviceConfiguration.Printable(queuesText)}\"");
            }

            if (requested == 0 || requested > (uint)maxQueues)
            {
                throw new DeviceSetupException($"frontend asked for {requested} queues; multi-queue-max-queues is {maxQueues}");
            }

            queueCount = (int)requested;
        }

        // Ring size: "ring-page-order" (blkif.h), or the older "num-ring-pages" spelling of the same
        // thing; both name the pages "ring-ref0".."ring-ref{N-1}". Neither: a single "ring-ref".
        int pageCount = 1;
        bool numberedRefs = false;
        string? orderText = read(BlkifKeys.RingPageOrder);
        string? pagesText = read(BlkifKeys.NumRingPages);
        if (orderText is not null)
        {
            if (!BackendPaths.TryParseDecimal(orderText, out uint order))
            {
                throw new DeviceSetupException($"bad \"ring-page-order\" \"{DeviceConfiguration.Printable(orderText)}\"");
            }

            if (order > (uint)maxRingPageOrder)
            {
                throw new DeviceSetupException($"frontend asked for ring-page-order {order}; max-ring-page-order is {maxRingPageOrder}");
            }

            pageCount = 1 << (int)order;
            numberedRefs = true;
        }
        else if (pagesText is not null)
        {
            if (!BackendPaths.TryParseDecimal(pagesText, out uint pages))
            {
                throw new DeviceSetupException($"bad \"num-ring-pages\" \"{DeviceConfiguration.Printable(pagesText)}\"");
            }

            if (pages == 0 || !BitOperations.IsPow2(pages))
            {
                throw new DeviceSetupException($"\"num-ring-pages\" {pages} is not a power of two");
            }

            if (pages > 1u << maxRingPageOrder)
            {
                throw new DeviceSetupException($"frontend asked for {pages} ring pages; max-ring-page-order is {maxRingPageOrder} ({1 << maxRingPageOrder} pages)");
            }

            pageCount = (int)pages;
            numberedRefs = true;
        }

        var queues = new FrontendQueue[queueCount];
        for (int q = 0; q < queueCount; q++)
        {
            string prefix = queueCount == 1 ? "" : BlkifKeys.Queue(q) + "/";
            queues[q] = ReadQueue(read, prefix, q, pageCount, numberedRefs);
        }

        return new FrontendRings(protocol, pageCount, persistent, queues);
    }

    private static FrontendQueue ReadQueue(Func<string, string?> read, string prefix, int index, int pageCount, bool numberedRefs)
    {
        string eventChannelKey = prefix + BlkifKeys.EventChannel;
        string? portText = read(eventChannelKey);
        if (!BackendPaths.TryParseDecimal(portText, out uint port))
        {
            throw new DeviceSetupException(portText is null
                ? $"missing \"{eventChannelKey}\""
                : $"bad \"{eventChannelKey}\" \"{DeviceConfiguration.Printable(portText)}\"");
        }

        var refs = new uint[pageCount];
        for (int i = 0; i < pageCount; i++)
        {
            string key = prefix + (numberedRefs ? BlkifKeys.RingRefN(i) : BlkifKeys.RingRef);
            string? refText = read(key);

            // A one-page ring announced with an order of 0 is sometimes published with the plain
            // "ring-ref" name; accept it rather than refuse a frontend that is merely old.
            if (refText is null && numberedRefs && pageCount == 1)
            {
                key = prefix + BlkifKeys.RingRef;
                refText = read(key);
            }

            if (!BackendPaths.TryParseDecimal(refText, out refs[i]))
            {
                throw new DeviceSetupException(refText is null
                    ? $"missing \"{key}\""
                    : $"bad \"{key}\" \"{DeviceConfiguration.Printable(refText)}\"");
            }
        }

        return new FrontendQueue(index, port, refs);
    }
}

using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

/// <summary>struct scsi_iovec { void *iov_base; size_t iov_len; } (the POSIX iovec, by the header's promise).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct ScsiIovec
{
    public nint iov_base;
    public nuint iov_len;
}

/// <summary>struct unmap_list { uint64_t lba; uint32_t num; } (16 bytes with its tail padding).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct UnmapList
{
    public ulong lba;
    public uint num;
}

/// <summary>struct scsi_persistent_reserve_out_basic (scsi-lowlevel.h), 24 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct PersistentReserveOutBasic
{
    public ulong reservation_key;
    public ulong service_action_reservation_key;
    public byte spec_i_pt;
    public byte all_tg_pt;
    public byte aptpl;
}

/// <summary>
/// The fields of struct scsi_task (scsi-lowlevel.h) a completion reads, by their x86_64/aarch64 LP64
/// offsets: the struct is read in place rather than declared whole, because only these fields are
/// needed and its tail (iovectors) is private to libiscsi. LayoutTests checks them against a real task.
/// </summary>
internal static unsafe class ScsiTask
{
    /// <summary>int status (enum scsi_status).</summary>
    internal const int StatusOffset = 0;
    /// <summary>unsigned char cdb[16].</summary>
    internal const int CdbOffset = 16;
    /// <summary>struct scsi_sense sense: { unsigned char error_type; enum scsi_sense_key key; int ascq; ... }.</summary>
    internal const int SenseKeyOffset = 52;
    /// <summary>sense.ascq: ASC in the high byte, ASCQ in the low byte.</summary>
    internal const int SenseAscqOffset = 56;
    /// <summary>struct scsi_data datain { int size; unsigned char *data; }.</summary>
    internal const int DataInSizeOffset = 64;
    internal const int DataInDataOffset = 72;

    internal static int Status(nint task) => *(int*)(task + StatusOffset);

    internal static int SenseKey(nint task) => *(int*)(task + SenseKeyOffset);

    internal static int SenseAscq(nint task) => *(int*)(task + SenseAscqOffset);

    /// <summary>The data-in buffer libiscsi allocated for a command without caller iovecs (inquiry, capacity, PR IN).</summary>
    internal static ReadOnlySpan<byte> DataIn(nint task)
    {
        int size = *(int*)(task + DataInSizeOffset);
        nint data = *(nint*)(task + DataInDataOffset);
        return data == 0 || size <= 0 ? default : new ReadOnlySpan<byte>((void*)data, size);
    }
}

/// <summary>enum scsi_status (iscsi.h): the values a completion distinguishes.</summary>
internal static class ScsiStatus
{
    internal const int GOOD = 0;
    internal const int CHECK_CONDITION = 2;
    internal const int BUSY = 8;
    internal const int RESERVATION_CONFLICT = 0x18;
    internal const int TASK_SET_FULL = 0x28;
    internal const int TASK_ABORTED = 0x40;
    internal const int CANCELLED = 0x0f000000;
    internal const int ERROR = 0x0f000001;
    internal const int TIMEOUT = 0x0f000002;
}

/// <summary>enum scsi_sense_key (SPC-4 4.5.6).</summary>
internal static class ScsiSenseKey
{
    internal const int NOT_READY = 0x02;
    internal const int MEDIUM_ERROR = 0x03;
    internal const int ILLEGAL_REQUEST = 0x05;
    internal const int UNIT_ATTENTION = 0x06;
    internal const int DATA_PROTECTION = 0x07;
    internal const int ABORTED_COMMAND = 0x0b;
}

/// <summary>poll(2) bits as iscsi_which_events and iscsi_service speak them (POLLIN/POLLOUT/POLLERR/POLLHUP).</summary>
internal static class PollEvents
{
    internal const short POLLIN = 0x001;
    internal const short POLLOUT = 0x004;
}

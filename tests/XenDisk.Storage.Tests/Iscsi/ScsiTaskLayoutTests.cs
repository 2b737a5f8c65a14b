using XenDisk.Storage.Iscsi.Interop;

namespace XenDisk.Storage.Tests.Iscsi;

/// <summary>
/// The struct scsi_task offsets and struct sizes the binding reads, against the installed headers:
/// compiles a program that prints offsetof/sizeof with clang (tools/setup installs it) and libiscsi-dev's headers.
/// </summary>
public sealed class ScsiTaskLayoutTests
{
    private const string Header = "/usr/include/iscsi/scsi-lowlevel.h";

    public static bool HeadersPresent => File.Exists(Header) && File.Exists("/usr/bin/clang");

    [Fact]
    public unsafe void Offsets_and_sizes_match_the_headers()
    {
        if (!HeadersPresent)
        {
            // The headers come with libiscsi-dev, which the service does not need; say so instead of passing quietly.
            Assert.Fail($"{Header} or clang is missing: install libiscsi-dev and clang (tools/setup --for-tests does).");
        }
        TempDirectory directory = new("xendisk-layout-");
        try
        {
            string source = directory.File("layout.c");
            File.WriteAllText(source, """
                #include <stdio.h>
                #include <stddef.h>
                #include <stdint.h>
                #include <iscsi/iscsi.h>
                #include <iscsi/scsi-lowlevel.h>
                int main(void) {
                    printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu\n",
                        offsetof(struct scsi_task, status), offsetof(struct scsi_task, cdb),
                        offsetof(struct scsi_task, sense.key), offsetof(struct scsi_task, sense.ascq),
                        offsetof(struct scsi_task, datain.size), offsetof(struct scsi_task, datain.data),
                        sizeof(struct scsi_iovec), sizeof(struct unmap_list),
                        sizeof(struct scsi_persistent_reserve_out_basic),
                        offsetof(struct scsi_persistent_reserve_out_basic, aptpl));
                    return 0;
                }
                """);
            string program = directory.File("layout");
            ProcessRunner.Output("/usr/bin/clang", source, "-o", program);
            long[] values = ProcessRunner.Output(program).Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(long.Parse).ToArray();
            Assert.Equal(
                [ScsiTask.StatusOffset, ScsiTask.CdbOffset, ScsiTask.SenseKeyOffset, ScsiTask.SenseAscqOffset,
                 ScsiTask.DataInSizeOffset, ScsiTask.DataInDataOffset, sizeof(ScsiIovec), sizeof(UnmapList),
                 sizeof(PersistentReserveOutBasic), (long)System.Runtime.InteropServices.Marshal.OffsetOf<PersistentReserveOutBasic>(nameof(PersistentReserveOutBasic.aptpl))],
                values);
        }
        finally
        {
            directory.Dispose();
        }
    }
}

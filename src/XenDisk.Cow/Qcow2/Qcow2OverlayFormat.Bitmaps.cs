using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>qemu-img bitmap for qcow2: QEMU's persistent dirty bitmaps (docs/interop/qcow2.txt == Bitmaps ==), so each tool reads what the other wrote.</summary>
internal sealed partial class Qcow2OverlayFormat
{
    public override OverlayOperationResult EditBitmaps(string imagePath, OverlayBitmapEdit edit, OverlayFileOptions? files = null)
    {
        files ??= new OverlayFileOptions();
        string bitmap = edit.Bitmap;
        using Qcow2Image qcow2 = Qcow2Disk.Open(Path.GetFullPath(imagePath), new Qcow2OpenOptions { BackingPolicy = files.BackingPolicy });
        foreach (OverlayBitmapStep step in edit.Steps)
        {
            IoStatus status = step.Operation switch
            {
                OverlayBitmapOperation.Add => qcow2.AddBitmap(bitmap, edit.Granularity > 0 ? edit.Granularity : qcow2.DefaultBitmapGranularity),
                OverlayBitmapOperation.Remove => qcow2.RemoveBitmap(bitmap),
                OverlayBitmapOperation.Clear => qcow2.ClearBitmap(bitmap),
                OverlayBitmapOperation.Enable => qcow2.SetBitmapEnabled(bitmap, true),
                OverlayBitmapOperation.Disable => qcow2.SetBitmapEnabled(bitmap, false),
                _ => qcow2.MergeIntoBitmap(bitmap, DirtyRangesOf(qcow2, edit.SourceFile, step.Source!)),
            };
            if (status != IoStatus.Ok)
            {
                return OverlayOperationResult.Failed(status, $"{step.Label} '{bitmap}' on '{imagePath}' failed: {qcow2.LastError ?? status.Describe()}");
            }
        }
        IoStatus closed = qcow2.Close();
        return closed == IoStatus.Ok
            ? new OverlayOperationResult { Status = IoStatus.Ok }
            : OverlayOperationResult.Failed(closed, $"storing the bitmaps of '{imagePath}' failed: {qcow2.LastError ?? closed.Describe()}");
    }

    private static IReadOnlyList<(long, long)> DirtyRangesOf(Qcow2Image target, string? sourceFile, string source)
    {
        if (sourceFile == null)
        {
            PersistentBitmap bitmap = target.Bitmaps.FirstOrDefault(b => b.Name == source)
                ?? throw new StorageException($"the image has no bitmap '{source}'");
            return Consistent(bitmap, source).DirtyRanges(target.Info.SizeBytes);
        }
        using FileImageDevice device = FileImageDevice.Open(Path.GetFullPath(sourceFile), readOnly: true);
        Qcow2Header header = Qcow2Disk.ReadHeader(device);
        PersistentBitmap other = Qcow2Image.ReadBitmaps(device, header).FirstOrDefault(b => b.Name == source)
            ?? throw new StorageException($"'{sourceFile}' has no bitmap '{source}'");
        return Consistent(other, source).DirtyRanges(header.VirtualSize);
    }

    private static PersistentBitmap Consistent(PersistentBitmap bitmap, string name) => bitmap.Inconsistent
        ? throw new StorageException($"bitmap '{name}' is inconsistent (its in_use flag was set when the image was opened) and cannot be merged")
        : bitmap;
}

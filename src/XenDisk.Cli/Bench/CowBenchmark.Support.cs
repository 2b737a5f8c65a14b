using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using XenDisk.Storage;

namespace XenDisk.Cli.Bench;

// What the benchmark needs around the engine: qemu-img, the file system type, a growable O_DIRECT file.
internal static partial class CowBenchmark
{
    /// <summary>qemu-img, as the peer under test.</summary>
    internal static partial class QemuImg
    {
        public static string Find()
        {
            foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':', StringSplitOptions.RemoveEmptyEntries))
            {
                string candidate = Path.Combine(directory, "qemu-img");
                if (File.Exists(candidate))
                {
                    return candidate;
                }
            }
            throw new CowBenchException("qemu-img is not installed; the benchmark compares XenDisk with QEMU's qcow2 driver (apt-get install qemu-utils).");
        }

        public static string Version(string qemuImg)
        {
            (int exit, string output, _) = Run(qemuImg, "--version");
            return exit == 0 ? output.Split('\n')[0].Trim() : "qemu-img (version unknown)";
        }

        /// <summary>io_uring when this QEMU build and kernel offer it, else Linux native AIO (both need -t none).</summary>
        public static string ChooseAio(string qemuImg, string basePath)
        {
            (int exit, _, _) = Run(qemuImg, "bench", "-f", "raw", "-t", "none", "-i", "io_uring", "-d", "1", "-c", "1", "-s", "4096", basePath);
            return exit == 0 ? "io_uring" : "native";
        }

        public static void CreateOverlay(string qemuImg, string overlayPath, string basePath, string options)
        {
            (int exit, _, string error) = Run(qemuImg, "create", "-q", "-f", "qcow2", "-b", basePath, "-F", "raw", "-o", options, overlayPath);
            if (exit != 0)
            {
                throw new CowBenchException($"qemu-img create {overlayPath} failed: {error.Trim()}");
            }
        }

        /// <summary>One qemu-img bench run of the phase's shape: the same offsets, sizes and depth as XenDisk's run.</summary>
        public static Measurement Bench(string qemuImg, string format, string path, string aio, int depth, long requests, Phase phase)
        {
            (int bufferSize, bool write) = Shape(phase);
            double? seconds = RunBench(qemuImg, format, path, aio, depth, requests, bufferSize, ClusterSize, write, out string failure);
            return seconds is null
                ? new Measurement(phase, requests, 0, 0, failure)
                : new Measurement(phase, requests, seconds.Value, 0, null);
        }

        /// <summary>
        /// `qemu-img bench` with O_DIRECT (-t none): <paramref name="requests"/> requests of
        /// <paramref name="bufferSize"/> bytes, <paramref name="stride"/> bytes apart, at
        /// <paramref name="depth"/>. Returns the seconds it reports, or null with the reason.
        /// </summary>
        public static double? RunBench(string qemuImg, string format, string path, string aio, int depth, long requests, int bufferSize, long stride, bool write, out string failure)
        {
            List<string> args =
            [
                "bench", "-f", format, "-t", "none", "-i", aio,
                "-d", depth.ToString(CultureInfo.InvariantCulture),
                "-c", requests.ToString(CultureInfo.InvariantCulture),
                "-s", bufferSize.ToString(CultureInfo.InvariantCulture),
                "-S", stride.ToString(CultureInfo.InvariantCulture),
                "--pattern=" + WritePattern.ToString(CultureInfo.InvariantCulture),
            ];
            if (write)
            {
                args.Add("-w");
            }
            args.Add(path);
            (int exit, string output, string error) = Run(qemuImg, [.. args]);
            Match match = CompletedIn().Match(output);
            if (exit != 0 || !match.Success)
            {
                failure = $"qemu-img bench exited with {exit}: {(error + output).Trim()}";
                return null;
            }
            failure = "";
            return double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
        }

        private static (int Exit, string Output, string Error) Run(string qemuImg, params string[] args) =>
            ProcessRunner.Run(qemuImg, args);

        [GeneratedRegex(@"Run completed in ([0-9]+(?:\.[0-9]+)?) seconds")]
        private static partial Regex CompletedIn();
    }

    /// <summary>The file system type of a directory, from /proc/self/mountinfo (the longest mount point containing it).</summary>
    private static class FileSystems
    {
        public static string TypeOf(string directory)
        {
            string path = Path.GetFullPath(directory);
            string best = "";
            string type = "unknown";
            try
            {
                foreach (string line in File.ReadLines("/proc/self/mountinfo"))
                {
                    // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue" (proc(5))
                    string[] fields = line.Split(' ');
                    int separator = Array.IndexOf(fields, "-");
                    if (fields.Length < 5 || separator < 0 || separator + 1 >= fields.Length)
                    {
                        continue;
                    }
                    string mountPoint = Unescape(fields[4]);
                    bool contains = mountPoint == "/" || path == mountPoint || path.StartsWith(mountPoint + "/", StringComparison.Ordinal);
                    if (contains && mountPoint.Length >= best.Length)
                    {
                        best = mountPoint;
                        type = fields[separator + 1];
                    }
                }
            }
            catch (IOException)
            {
                return "unknown";
            }
            return type;
        }

        /// <summary>mountinfo escapes space, tab, newline and backslash as \ooo octal.</summary>
        private static string Unescape(string field) => Regex.Replace(field, @"\\([0-7]{3})", m => ((char)Convert.ToInt32(m.Groups[1].Value, 8)).ToString());
    }
}

using System.Buffers.Binary;
using System.Net;
using System.Text;
using System.Threading.Channels;

namespace XenDisk.Service.Tests.Support;

/// <summary>One histogram data point of an OTLP export, with its metric's name and unit and its attributes as strings.</summary>
internal sealed record OtlpHistogramPoint(string Metric, string Unit, IReadOnlyDictionary<string, string> Attributes, ulong Count, double Sum, IReadOnlyList<ulong> BucketCounts, IReadOnlyList<double> Bounds);

/// <summary>
/// An OTLP/HTTP metrics receiver on loopback: accepts POST /v1/metrics with a protobuf
/// ExportMetricsServiceRequest (opentelemetry/proto/collector/metrics/v1), answers 200 with an empty
/// ExportMetricsServiceResponse, and hands each request's histogram points to the test.
/// </summary>
internal sealed class OtlpReceiver : IAsyncDisposable
{
    private readonly HttpListener _listener = new();
    private readonly Channel<List<OtlpHistogramPoint>> _exports = Channel.CreateUnbounded<List<OtlpHistogramPoint>>();
    private readonly Task _loop;

    public OtlpReceiver(int port)
    {
        Endpoint = $"http://127.0.0.1:{port}/v1/metrics";
        _listener.Prefixes.Add($"http://127.0.0.1:{port}/");
        _listener.Start();
        _loop = Task.Run(ServeAsync);
    }

    /// <summary>The URL to give the exporter (HttpProtobuf sends to the URL as given).</summary>
    public string Endpoint { get; }

    /// <summary>The histogram points of the next export request; fails the test after <paramref name="timeout"/>.</summary>
    public async Task<List<OtlpHistogramPoint>> NextExportAsync(TimeSpan timeout)
    {
        using var cancel = new CancellationTokenSource(timeout);
        return await _exports.Reader.ReadAsync(cancel.Token);
    }

    /// <summary>Every export received and not read yet, oldest first.</summary>
    public List<List<OtlpHistogramPoint>> Drain()
    {
        var exports = new List<List<OtlpHistogramPoint>>();
        while (_exports.Reader.TryRead(out List<OtlpHistogramPoint>? export))
        {
            exports.Add(export);
        }

        return exports;
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Stop();
        _listener.Close();
        await _loop;
    }

    private async Task ServeAsync()
    {
        while (true)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync();
            }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                _exports.Writer.TryComplete();
                return;
            }

            using var body = new MemoryStream();
            await context.Request.InputStream.CopyToAsync(body);
            bool ok = context.Request.HttpMethod == "POST" && context.Request.Url!.AbsolutePath == "/v1/metrics";
            if (ok)
            {
                // Queued before the answer: once the exporter's call returns, its export is here.
                _exports.Writer.TryWrite(Decode(body.ToArray()));
            }

            context.Response.StatusCode = ok ? 200 : 404;
            context.Response.ContentType = "application/x-protobuf";
            context.Response.ContentLength64 = 0;
            context.Response.Close();
        }
    }

    // Field numbers from opentelemetry/proto/{collector/metrics,metrics,common}/v1/*.proto.

    private static List<OtlpHistogramPoint> Decode(byte[] request)
    {
        var points = new List<OtlpHistogramPoint>();
        foreach (Field resourceMetrics in Fields(request).Where(f => f.Number == 1))
        {
            foreach (Field scopeMetrics in Fields(resourceMetrics.Bytes).Where(f => f.Number == 2))
            {
                foreach (Field metric in Fields(scopeMetrics.Bytes).Where(f => f.Number == 2))
                {
                    string name = "";
                    string unit = "";
                    ReadOnlyMemory<byte>? histogram = null;
                    foreach (Field field in Fields(metric.Bytes))
                    {
                        switch (field.Number)
                        {
                            case 1: name = Encoding.UTF8.GetString(field.Bytes.Span); break;
                            case 3: unit = Encoding.UTF8.GetString(field.Bytes.Span); break;
                            case 9: histogram = field.Bytes; break;
                        }
                    }

                    if (histogram is null)
                    {
                        continue;
                    }

                    foreach (Field point in Fields(histogram.Value).Where(f => f.Number == 1))
                    {
                        points.Add(DecodePoint(name, unit, point.Bytes));
                    }
                }
            }
        }

        return points;
    }

    private static OtlpHistogramPoint DecodePoint(string metric, string unit, ReadOnlyMemory<byte> point)
    {
        var attributes = new Dictionary<string, string>(StringComparer.Ordinal);
        ulong count = 0;
        double sum = 0;
        var buckets = new List<ulong>();
        var bounds = new List<double>();
        foreach (Field field in Fields(point))
        {
            switch (field.Number)
            {
                case 4: count = field.Value; break;
                case 5: sum = BitConverter.UInt64BitsToDouble(field.Value); break;
                case 6: buckets.AddRange(Fixed64s(field).Select(v => v)); break;
                case 7: bounds.AddRange(Fixed64s(field).Select(BitConverter.UInt64BitsToDouble)); break;
                case 9:
                    (string key, string value) = KeyValue(field.Bytes);
                    attributes[key] = value;
                    break;
            }
        }

        return new OtlpHistogramPoint(metric, unit, attributes, count, sum, buckets, bounds);
    }

    private static (string Key, string Value) KeyValue(ReadOnlyMemory<byte> keyValue)
    {
        string key = "";
        string value = "";
        foreach (Field field in Fields(keyValue))
        {
            if (field.Number == 1)
            {
                key = Encoding.UTF8.GetString(field.Bytes.Span);
            }
            else if (field.Number == 2)
            {
                // AnyValue: string_value = 1, int_value = 3.
                foreach (Field any in Fields(field.Bytes))
                {
                    value = any.Number switch
                    {
                        1 => Encoding.UTF8.GetString(any.Bytes.Span),
                        3 => ((long)any.Value).ToString(System.Globalization.CultureInfo.InvariantCulture),
                        _ => value,
                    };
                }
            }
        }

        return (key, value);
    }

    /// <summary>A repeated fixed64/double field: packed (length-delimited) or one value per occurrence.</summary>
    private static IEnumerable<ulong> Fixed64s(Field field)
    {
        if (field.WireType == 1)
        {
            return [field.Value];
        }

        var values = new ulong[field.Bytes.Length / 8];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = BinaryPrimitives.ReadUInt64LittleEndian(field.Bytes.Span[(i * 8)..]);
        }

        return values;
    }

    private readonly record struct Field(int Number, int WireType, ulong Value, ReadOnlyMemory<byte> Bytes);

    /// <summary>The fields of one protobuf message, in order (wire types 0, 1, 2 and 5; groups are not used by OTLP).</summary>
    private static List<Field> Fields(ReadOnlyMemory<byte> message)
    {
        var fields = new List<Field>();
        ReadOnlySpan<byte> span = message.Span;
        int offset = 0;
        while (offset < span.Length)
        {
            ulong tag = Varint(span, ref offset);
            int number = (int)(tag >> 3);
            int wireType = (int)(tag & 7);
            switch (wireType)
            {
                case 0:
                    fields.Add(new Field(number, wireType, Varint(span, ref offset), default));
                    break;
                case 1:
                    fields.Add(new Field(number, wireType, BinaryPrimitives.ReadUInt64LittleEndian(span[offset..]), default));
                    offset += 8;
                    break;
                case 2:
                    int length = checked((int)Varint(span, ref offset));
                    fields.Add(new Field(number, wireType, 0, message.Slice(offset, length)));
                    offset += length;
                    break;
                case 5:
                    fields.Add(new Field(number, wireType, BinaryPrimitives.ReadUInt32LittleEndian(span[offset..]), default));
                    offset += 4;
                    break;
                default:
                    throw new InvalidDataException($"protobuf wire type {wireType} at offset {offset}");
            }
        }

        return fields;
    }

    private static ulong Varint(ReadOnlySpan<byte> span, ref int offset)
    {
        ulong value = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            byte b = span[offset++];
            value |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0)
            {
                return value;
            }
        }

        throw new InvalidDataException("varint longer than 10 bytes");
    }
}
